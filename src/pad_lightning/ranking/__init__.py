"""Pure ranking math on [B, n] score tensors: Plackett-Luce, the PAD losses, the preference
baselines, agreement measures and the MCQ selection mix. Imports: runtime; torch."""
