"""Keeping Redis tidy while reading: when to do it (cadence), idle consumers (consumers), trimming (retention)."""
