"""Trainers (``import alitool.trainers``): the ALI game and one shared training loop."""
