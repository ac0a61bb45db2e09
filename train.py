"""Pretrain one configuration, or a sweep with -m (the same as `sharebench train …`):

python train.py sharing=partial_qk ratio=0.9
python train.py -m sharing=none,partial_qk ratio=0.5,0.9
"""

from sharebench.main import main

if __name__ == "__main__":
    main()
