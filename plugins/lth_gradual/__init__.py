"""Pruning during training (Zhu & Gupta 2017). (being written.)"""
