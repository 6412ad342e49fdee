"""Pruning at initialisation: SNIP and SynFlow. (being written.)"""
