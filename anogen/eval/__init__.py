"""Downstream evaluation: does a detector trained on the synthetic anomalies find real ones?

``metrics`` (numpy/scipy), ``baselines`` (Perlin and cut-paste anomalies), ``segnet`` (the detector),
``protocol`` (train, select on synthetic validation, score held-out real images) and ``quality``
(alignment, diversity, memorisation, rejection share).
"""
