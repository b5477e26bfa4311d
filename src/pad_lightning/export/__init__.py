"""Benchmark answer exports (AlpacaEval 2, MT-Bench, Arena-Hard): question files, a student's
answers, the answer files the official judges read. Imports: lm, tracking and the layers below."""
