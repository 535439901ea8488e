"""Tracking: SAM 2 (transformers' ``Sam2VideoModel``) follows an object given by a box on the first frame; its
masks feed the inpainting / layout builders of ``conditions`` (``vdot prepare inpaint|layout --box B --track-model``),
as the release's ``bboxtrack`` mode feeds its ``SAM2VideoAnnotator`` masks to inpainting.

Frames are resized to the model's square input (bilinear, 1024 for the released models), scaled to [0, 1] and
normalised with ImageNet's mean and std (transformers' SAM 2 video processor, whose torchvision-based class is not
needed here); the box is scaled by the same factors and given as SAM 2's two corner points (labels 2, 3) on frame 0;
propagation runs forward over the video; each frame's low-resolution mask logits are resized to the frame (bilinear)
and thresholded at 0 -- the sam2 package's and the release's rule. White (1) = the object.
"""

from __future__ import annotations

import numpy as np

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


class Sam2Tracker:
    def __init__(self, model):
        self.model = model
        self.side = int(model.config.image_size)

    def pixels(self, frames):
        """uint8 [T, H, W, 3] RGB -> float32 [T, 3, side, side] (the model's input)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float() / 255.0
        x = F.interpolate(x, (self.side, self.side), mode="bilinear", align_corners=False)
        return (x - torch.tensor(MEAN, dtype=torch.float32)[:, None, None]) / torch.tensor(STD, dtype=torch.float32)[
            :, None, None]

    def __call__(self, frames, box) -> np.ndarray:
        """uint8 [T, H, W, 3] and a box (x1, y1, x2, y2) on frame 0 in frame pixels -> masks float32 [T, H, W] in
        {0, 1}."""
        import torch
        import torch.nn.functional as F
        from transformers import Sam2VideoInferenceSession

        t, h, w = frames.shape[:3]
        session = Sam2VideoInferenceSession(video=self.pixels(frames), video_height=h, video_width=w,
                                            dtype=torch.float32)
        corners = torch.tensor(box, dtype=torch.float32).reshape(1, 1, 2, 2) * torch.tensor([self.side / w,
                                                                                             self.side / h])
        obj = session.obj_id_to_idx(1)
        session.add_point_inputs(obj, 0, {"point_coords": corners,
                                          "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32)})
        session.remove_mask_inputs(obj, 0)
        session.obj_with_new_inputs = [1]
        masks = np.zeros((t, h, w), np.float32)
        with torch.inference_mode():
            self.model(inference_session=session, frame_idx=0)
            for out in self.model.propagate_in_video_iterator(session):
                logits = F.interpolate(out.pred_masks[:1].float(), (h, w), mode="bilinear", align_corners=False)
                masks[out.frame_idx] = (logits[0, 0] > 0).numpy()
        return masks


def load(path: str) -> Sam2Tracker:
    from transformers import Sam2VideoModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # vdot's output stays its own lines
    return Sam2Tracker(Sam2VideoModel.from_pretrained(path, local_files_only=True).eval())
