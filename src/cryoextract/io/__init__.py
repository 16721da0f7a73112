"""Readers and writers: paths or streams in, plain tables and arrays out. No numerics."""
