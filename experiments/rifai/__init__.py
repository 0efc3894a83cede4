"""Rifai et al. (2011), Table 1: the study's config, protocol, fine-tuning, columns and tables (README.md)."""
