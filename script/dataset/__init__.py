"""Dataset scripts: download published data, convert D4RL / robomimic files, generate scripted
demonstrations."""
