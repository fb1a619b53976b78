"""copsctl.data"""
