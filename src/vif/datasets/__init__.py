"""Datasets: offline by default (shipped in registry packages or generated), loaders for the rest.

Submodules: :mod:`vif.datasets.survival` (SUPPORT, Rotterdam/GBSG, METABRIC loader),
:mod:`vif.datasets.graphs` (karate club, Les Miserables, stochastic block models),
:mod:`vif.datasets.ranking` (synthetic Mediamill/Delicious-shaped data, Extreme Classification loader).
Files that cannot ship are looked up in a cache folder (see :mod:`vif.datasets._files`).
"""
