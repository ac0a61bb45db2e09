"""What models read: pretraining corpora packed into token blocks (`corpora`), the tokenizers (`tokenizer`), the
GLUE tasks and their metrics (`glue`), and the local mirror for machines without the hub (`mirror`)."""
