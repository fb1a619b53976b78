"""copsctl.model"""
