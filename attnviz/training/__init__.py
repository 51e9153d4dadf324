"""Training the shipped attention (``attnviz train``): the Lite0 gates of every family
(``gates``, which also holds what every trainer shares), lite0-attnpool's pooling gate
(``pool``) and the hosted non-local and deformable blocks (``blocks``)."""
