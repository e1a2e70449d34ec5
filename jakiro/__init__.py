"""Jakiro: lossless tree speculative decoding with a mixture-of-experts draft head."""
