"""One module per command; each registers itself on :data:`cifar_resnet_cli.cli.common.app`."""
