"""``python -m cifar_resnet_cli``: the same CLI; ``torchrun -m cifar_resnet_cli`` uses this."""

from .cli.app import main

if __name__ == "__main__":
    main()
