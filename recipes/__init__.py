"""Recipe files (YAML) shipped with copsctl; installed as ``copsctl.recipes``."""
