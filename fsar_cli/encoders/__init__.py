"""Image and text encoders: OpenAI CLIP loading (:mod:`.clip`, the only importer of the ``clip``
package) and fsar's offline demo encoder (:mod:`.offline`)."""
