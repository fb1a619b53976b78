"""copsctl.train"""
