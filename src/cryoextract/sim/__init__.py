"""Simulation of realistic test data (micrographs with particles, CTF and noise, picks)."""
