"""Image and text encoders: OpenAI CLIP loading (:mod:`.clip`, the only importer of the ``clip``
package) and fsar's offline demo encoder (:mod:`.offline`)."""

#: The name of fsar's offline demo encoder (:mod:`.offline`), defined here so that tables can
#: recognise it without importing torch.
OFFLINE_ENCODER_NAME = "offline-demo"
