"""Movement pruning (Sanh et al. 2020). (being written.)"""
