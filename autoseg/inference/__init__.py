"""Prediction: sliding window with TTA, ensembling, and the way back to the source geometry.

Never imports training: a trained model is files (weights + plan) that this package reads.
"""
