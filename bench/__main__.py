"""make bench: every benchmark, each beside its raw baseline in the same run."""
from bench import ingress

if __name__ == "__main__":
    ingress.main()
