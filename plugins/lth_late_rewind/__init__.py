"""Late rewinding (Frankle et al. 2020). (being written.)"""
