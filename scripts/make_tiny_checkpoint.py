"""Make the tiny random Data2VecText checkpoints shipped in zoo/assets (needs torch + transformers).

    python scripts/make_tiny_checkpoint.py

Writes ``zoo/assets/tiny-data2vec-text`` (config.json + model.safetensors, as
``save_pretrained`` writes it) and ``zoo/assets/tiny-data2vec-text-bin`` (config.json +
pytorch_model.bin from ``torch.save(state_dict)``, tied weights sharing storage).
"""

from pathlib import Path

import torch
import transformers

ASSETS = Path(__file__).resolve().parents[1] / "zoo" / "assets"


def main() -> None:
    torch.manual_seed(0)
    config = transformers.Data2VecTextConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
    )
    model = transformers.Data2VecTextForMaskedLM(config).eval()
    model.save_pretrained(ASSETS / "tiny-data2vec-text")
    bin_dir = ASSETS / "tiny-data2vec-text-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(bin_dir)
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    for path in sorted(ASSETS.rglob("*.*")):
        print(f"{path.relative_to(ASSETS)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
