"""Errors shared by several stages (the bottom of the package: imports nothing of rsdyn)."""

from __future__ import annotations


class UnitStatsInputError(ValueError):
    """The activations or the per-unit settings cannot be analysed; the message says why."""


class PopulationInputError(UnitStatsInputError):
    """The states or the population settings (jpca, tme) cannot give a population statistic."""
