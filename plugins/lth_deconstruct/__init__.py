"""Criteria from Deconstructing Lottery Tickets (Zhou et al. 2019). (being written.)"""
