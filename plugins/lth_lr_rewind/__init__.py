"""Learning-rate rewinding and fine-tuning (Renda et al. 2020). (being written.)"""
