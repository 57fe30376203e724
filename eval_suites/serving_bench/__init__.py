"""PIE and RAPID measured where users meet them: LSP completions while typing, `ask` answers."""
