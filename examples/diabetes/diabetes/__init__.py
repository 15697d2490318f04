"""Federated regression on scikit-learn's diabetes data, split over clients by age band."""
