"""Federated binary classification without torch: scikit-learn's SGDClassifier on breast-cancer data."""
