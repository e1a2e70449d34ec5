"""Interactive applications on top of :class:`jakiro.model.ea_model.EaModel`.

* :mod:`jakiro.application.webui`: the browser chat (``python -m jakiro.application.webui``; needs the ``webui``
  extra, gradio);
* :mod:`jakiro.application.chat`: answers of a multi-turn conversation, streamed with accepted draft tokens marked;
* :mod:`jakiro.application.view`: the pure view logic (escaped, highlighted HTML; speed, τ and acceptance numbers).
"""
