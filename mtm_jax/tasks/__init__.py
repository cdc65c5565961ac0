"""Model families as tasks: what differs between NDT1-MtM and POYO (their data, model,
loss, validation, checkpoint records, pretrained weights and evaluation), behind one
interface (base.Task) that training.trainer, the evaluation programs and the studies
drive alike. registry.get(family) gives a family's task."""
