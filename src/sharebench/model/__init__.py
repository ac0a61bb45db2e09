"""The models and what is done to them: the transformer, read top to bottom (`transformer`), and what it shares
(`shares`); checkpoints saved and loaded (`checkpoint`, Llama's and GGUF's in `llama`), converted (`convert`) and
exported for `transformers` (`export`, with the remote code in `hf`); memory and inference costs (`memory`,
`inference`), FSDP units that keep shared tensors whole (`fsdp`), and a plain reference forward pass
(`reference`). The schemes themselves live in `sharebench.sharing` and `sharebench.layers`, named by configs."""
