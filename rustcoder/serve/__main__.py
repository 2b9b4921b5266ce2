"""`python -m rustcoder.serve transformers-engine ...`: the engine process `rustcoder serve --engine transformers` starts."""

from .transformers_engine import main

if __name__ == "__main__":
    main()
