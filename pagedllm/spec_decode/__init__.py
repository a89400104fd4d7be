"""Speculative decoding: proposers draft tokens, the model runner verifies them in the next
forward (sample/rejection_sampler.py), the scheduler budgets them (core/sched/scheduler.py)."""
