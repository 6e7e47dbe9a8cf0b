"""Representation quality (Dumoulin et al. 2017, section 4.3, tables 1-2).

- ``svm``: the L2-SVM protocol on fixed feature arrays (balanced labelled sets, validation split, C selection);
- ``features``: a model's feature vectors through the backend interface, and the raw-pixel and PCA baselines;
- ``reports``: the two evaluations the CLI runs (``alitool eval svm``, ``alitool eval classify``), with JSON output.
"""
