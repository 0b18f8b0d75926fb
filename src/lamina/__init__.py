"""lamina: a daemonless toolkit for container images made of layers.

Rooms of the code, lowest first (a room never imports a higher one):
``digest``/``errors`` → ``store`` → ``layer`` → ``image`` → ``transport`` →
``build``/``run``/``inspect`` → ``cli``/``server``.  See README.md, "Layout of the code".
"""

__version__ = "0.1.0"
