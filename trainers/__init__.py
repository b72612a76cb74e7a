"""LoRA training adapters (PEFT + TRL) with presets."""
