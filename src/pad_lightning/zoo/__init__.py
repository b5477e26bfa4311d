"""The embedded toy zoo: the character tokenizer and the teacher/student pair built and cached
offline. Imports: training and the layers below it."""
