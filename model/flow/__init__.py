"""Flow-matching policies: rectified flow (`FlowModel`), shortcut flow (`ShortcutFlowModel`), and the learned
exploration noise of their fine-tuned Euler steps (`FlowNoise`)."""
