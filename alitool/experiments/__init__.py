"""Reproductions of the paper's experiments that run end to end here (``alitool experiment ...``)."""
