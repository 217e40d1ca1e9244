"""Screens: levers judged on cached out-of-fold features, without training or the service's path.

A screen ranks many variants cheaply; what it favours is confirmed through the service's path
(``mtdefect.cv.rescore``) before it becomes a default. Kept outside ``mtdefect.cv`` because nothing
here changes a fold's result (``cv.fold.code_digest`` does not cover it).
"""
