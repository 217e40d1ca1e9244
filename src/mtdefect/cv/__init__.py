"""Grouped k-fold cross-validation: a way of running the pipeline, not a second pipeline.

``data.folds`` writes one ordinary manifest per fold; ``cv.fold`` runs the usual ``train()`` on it
(checkpoint choice, head refit and calibration on the fold's inner validation slice) and scores the
held-out fold through the service's path; ``cv.pool`` pools the out-of-fold rows and draws
intervals by resampling tile groups; ``cv.jobs`` runs folds side by side and skips finished ones.
"""
