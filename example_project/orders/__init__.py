"""The `orders` app: the tasks that stream entries become."""
