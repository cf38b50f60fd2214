# coding: utf-8
"""
@article{Xu2024CryoMAE,
title = "CryoMAE: Few-Shot Cryo-EM Particle Picking with Masked Autoencoders",
author = "Xu, Chentianye and Zhan, Xueying and Xu, Min",
journal = "arXiv preprint arXiv:2404.10178",
year = "2024",
url = "https://arxiv.org/abs/2404.10178",
}

@article{Li2022PickerOptimizer,
title = "A Transfer Learning-Based Classification Model for Particle Pruning in Cryo-Electron Microscopy",
author = "Li, Hongjia and Chen, Ge and Gao, Shan and Li, Jintao and Wan, Xiaohua and Zhang, Fa",
journal = "Journal of Computational Biology",
volume = "29",
number = "10",
pages = "1117--1131",
year = "2022",
doi = "10.1089/cmb.2022.0101",
}

@article{Wang2025SemiETPicker,
title = "SemiETPicker: Fast and Label-Efficient Particle Picking for CryoET Tomography Using Semi-Supervised Learning",
author = "Wang, Linhan and Dou, Jianwen and Li, Wang and Wang, Shengkun",
journal = "arXiv preprint",
year = "2025",
}

@mastersthesis{MasoumzadehTork2019HydraPicker,
title = "Object Detection Frameworks for Fully Automated Particle Picking in Cryo-EM",
author = "Masoumzadeh Tork, Abbas",
school = "York University, Toronto",
year = "2019",
}

@inproceedings{He2022MAE,
title = "Masked Autoencoders Are Scalable Vision Learners",
author = "He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\'a}r, Piotr and Girshick, Ross",
booktitle = "Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)",
pages = "16000--16009",
year = "2022",
}

@inproceedings{Kiryo2017nnPU,
title = "Positive-Unlabeled Learning with Non-Negative Risk Estimator",
author = "Kiryo, Ryuichi and Niu, Gang and du Plessis, Marthinus C. and Sugiyama, Masashi",
booktitle = "Advances in Neural Information Processing Systems 30 (NeurIPS)",
year = "2017",
}

@article{Bepler2019Topaz,
title = "Positive-unlabeled convolutional neural networks for particle picking in cryo-electron micrographs",
author = "Bepler, Tristan and Morin, Andrew and Rapp, Micah and Brasch, Julia and Shapiro, Lawrence and Noble, Alex J. and Berger, Bonnie",
journal = "Nature Methods",
volume = "16",
pages = "1153--1160",
year = "2019",
doi = "10.1038/s41592-019-0575-8",
}
"""
