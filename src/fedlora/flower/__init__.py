"""fedlora as a Flower app (Message API): the same aggregators and client trainer over Flower.

Importing this package needs ``flwr``; nothing else in fedlora does.
"""
