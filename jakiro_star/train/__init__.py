"""Jakiro* draft training: the reference's ``accelerate launch -m jakiro_star.train.main ...`` (see :mod:`.main`)."""
