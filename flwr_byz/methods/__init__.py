"""Each method's algorithm as pure torch (no Flower import): state dataclasses, ``plan_round``
(the round's seeded draws), a row-wise ``client_step`` and a ``server_step`` per method, called
by the Flower shells (``strategies``, ``clients``) and by the batched engine alike.

Modules: ``fedavg`` (robust FedAvg update, local SGD epochs), ``momentum`` (worker momentum,
Eq. (10) clipping), ``marina`` (Byz-VR-MARINA-PP), ``ef21`` (Byz-EF21-SGDM, Byz-EF21, BR-CSGD),
``mu2sgd`` (mu2-SGD), ``byzsgd`` (ByzSGD); shared: ``common`` (clipping, steps, momentum),
``sampling`` (node and seed draws), ``surface`` (the typed attack surface).
"""
