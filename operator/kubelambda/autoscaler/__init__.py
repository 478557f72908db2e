"""Scaling decisions for function Deployments: a pure decider and the thin loop that applies it."""

from kubelambda.autoscaler.decider import Policy, ScaleResult, ScalerState, Stats, decide

__all__ = ["Policy", "ScaleResult", "ScalerState", "Stats", "decide"]
